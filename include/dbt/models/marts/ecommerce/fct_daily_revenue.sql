with

purchases as (

    select * from {{ ref('fct_purchases') }}
    where is_purchased

),

daily as (

    select
        purchase_date,
        count(*) as orders_count,
        sum(price) as gross_revenue,
        count(*) filter (where is_returned) as returns_count,
        coalesce(sum(price) filter (where is_returned), 0) as returned_revenue

    from purchases
    group by 1

),

final as (

    select
        purchase_date,
        orders_count,
        gross_revenue,
        returns_count,
        returned_revenue,
        gross_revenue - returned_revenue as net_revenue

    from daily

)

select * from final
