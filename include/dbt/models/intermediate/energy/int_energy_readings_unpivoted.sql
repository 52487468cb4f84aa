{#- One column per OBIS code in the raw streams; a meter fills only the one it measures. -#}
{%- set obis_columns = [
    {'column': 'import_kwh', 'obis_code': '0100011D00FF', 'direction': 'import'},
    {'column': 'export_kwh', 'obis_code': '0100021D00FF', 'direction': 'export'},
] -%}

with

readings as (

    select * from {{ ref('stg_energy_meters__muid_1') }}
    union all
    select * from {{ ref('stg_energy_meters__muid_2') }}

),

unpivoted as (

    {% for obis in obis_columns -%}
    select
        meter_muid,
        '{{ obis.obis_code }}'::text as obis_code,
        '{{ obis.direction }}'::text as direction,
        reading_at,
        {{ obis.column }} as energy_kwh,
        reading_quality,
        source_stream,
        airbyte_raw_id,
        extracted_at
    from readings
    where {{ obis.column }} is not null
    {%- if not loop.last %}

    union all

    {% endif %}
    {%- endfor %}

),

-- A re-synced reading lands as a new raw record: keep the latest extraction.
deduplicated as (

    select distinct on (meter_muid, obis_code, reading_at) *
    from unpivoted
    order by meter_muid, obis_code, reading_at, extracted_at desc, airbyte_raw_id desc

),

final as (

    select
        {{ surrogate_key(['meter_muid', 'obis_code', "reading_at at time zone 'utc'"]) }}
            as energy_reading_id,
        meter_muid,
        obis_code,
        direction,
        reading_at,
        -- A reading at t is the energy of (t - 15 min, t]: it belongs to the hour and day
        -- this start falls in (so the reading at D+1 00:00 belongs to day D).
        reading_at - interval '15 minutes' as interval_start_at,
        energy_kwh,
        reading_quality,
        source_stream,
        airbyte_raw_id,
        extracted_at

    from deduplicated

)

select * from final
