with

purchases as (

    select * from {{ ref('stg_ecommerce__purchases') }}

),

products as (

    select * from {{ ref('stg_ecommerce__products') }}

),

final as (

    select
        purchases.purchase_id,
        purchases.customer_id,
        purchases.product_id,
        purchases.added_to_cart_at,
        purchases.purchased_at,
        purchases.returned_at,
        (purchases.purchased_at at time zone 'utc')::date as purchase_date,
        products.price,
        purchases.purchased_at is not null as is_purchased,
        purchases.returned_at is not null as is_returned,
        purchases.created_at,
        purchases.updated_at

    from purchases
    left join products
        on purchases.product_id = products.product_id

)

select * from final
