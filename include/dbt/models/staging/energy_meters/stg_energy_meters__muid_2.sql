with

source as (

    select * from {{ source('energy_meters', 'muid_2') }}

),

renamed as (

    select
        _airbyte_raw_id as airbyte_raw_id,
        'muid_2'::text as source_stream,
        tags::jsonb ->> 'muid' as meter_muid,
        tags::jsonb ->> 'quality' as reading_quality,
        measurement,
        {{ to_utc_timestamp('"timestamp"') }} as reading_at,
        _0100011d00ff::numeric as import_kwh,
        _0100021d00ff::numeric as export_kwh,
        _airbyte_extracted_at as extracted_at

    from source

)

select * from renamed
