with

products as (

    select * from {{ ref('stg_ecommerce__products') }}

),

final as (

    select
        product_id,
        make,
        model,
        model_year,
        price,
        created_at,
        updated_at

    from products

)

select * from final
