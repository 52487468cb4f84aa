with

source as (

    select * from {{ source('ecommerce', 'purchases') }}

),

renamed as (

    select
        id::bigint as purchase_id,
        user_id::bigint as customer_id,
        product_id::bigint as product_id,
        {{ to_utc_timestamp('added_to_cart_at') }} as added_to_cart_at,
        {{ to_utc_timestamp('purchased_at') }} as purchased_at,
        {{ to_utc_timestamp('returned_at') }} as returned_at,
        {{ to_utc_timestamp('created_at') }} as created_at,
        {{ to_utc_timestamp('updated_at') }} as updated_at,
        _airbyte_extracted_at as extracted_at

    from source

),

-- Airbyte dedups on id, but a reset or full re-sync can leave older versions behind.
deduplicated as (

    select distinct on (purchase_id) *
    from renamed
    order by purchase_id, updated_at desc nulls last, extracted_at desc

)

select * from deduplicated
