with

source as (

    select * from {{ source('ecommerce', 'products') }}

),

renamed as (

    select
        id::bigint as product_id,
        make,
        model,
        year::integer as model_year,
        price::numeric as price,
        {{ to_utc_timestamp('created_at') }} as created_at,
        {{ to_utc_timestamp('updated_at') }} as updated_at,
        _airbyte_extracted_at as extracted_at

    from source

),

-- Airbyte dedups on id, but a reset or full re-sync can leave older versions behind.
deduplicated as (

    select distinct on (product_id) *
    from renamed
    order by product_id, updated_at desc nulls last, extracted_at desc

)

select * from deduplicated
