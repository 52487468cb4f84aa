with

source as (

    select * from {{ source('ecommerce', 'users') }}

),

renamed as (

    select
        id::bigint as customer_id,
        name as full_name,
        title,
        email,
        telephone,
        age::integer as age,
        gender,
        language,
        nationality,
        occupation,
        academic_degree,
        address::jsonb ->> 'city' as address_city,
        address::jsonb ->> 'state' as address_state,
        address::jsonb ->> 'postal_code' as address_postal_code,
        address::jsonb ->> 'country_code' as address_country_code,
        address::jsonb as address,
        {{ to_utc_timestamp('created_at') }} as created_at,
        {{ to_utc_timestamp('updated_at') }} as updated_at,
        _airbyte_extracted_at as extracted_at

    from source

),

-- Airbyte dedups on id, but a reset or full re-sync can leave older versions behind.
deduplicated as (

    select distinct on (customer_id) *
    from renamed
    order by customer_id, updated_at desc nulls last, extracted_at desc

)

select * from deduplicated
