with

customers as (

    select * from {{ ref('stg_ecommerce__users') }}

),

purchases as (

    select * from {{ ref('fct_purchases') }}

),

customer_purchases as (

    select
        customer_id,
        count(*) filter (where is_purchased) as orders_count,
        count(*) filter (where is_returned) as returns_count,
        min(purchased_at) as first_purchased_at,
        max(purchased_at) as last_purchased_at,
        coalesce(sum(price) filter (where is_purchased and not is_returned), 0)
            as lifetime_net_revenue

    from purchases
    group by 1

),

final as (

    select
        customers.customer_id,
        customers.full_name,
        customers.email,
        customers.age,
        customers.gender,
        customers.address_city,
        customers.address_state,
        customers.address_country_code,
        customers.created_at,
        customers.updated_at,
        coalesce(customer_purchases.orders_count, 0) as orders_count,
        coalesce(customer_purchases.returns_count, 0) as returns_count,
        customer_purchases.first_purchased_at,
        customer_purchases.last_purchased_at,
        coalesce(customer_purchases.lifetime_net_revenue, 0) as lifetime_net_revenue

    from customers
    left join customer_purchases
        on customers.customer_id = customer_purchases.customer_id

)

select * from final
