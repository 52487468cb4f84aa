-- One row per meter and direction: a meter reporting import and export has two.
with

readings as (

    select * from {{ ref('int_energy_readings_unpivoted') }}

),

meters as (

    select
        meter_muid,
        direction,
        min(obis_code) as obis_code,
        min(source_stream) as source_stream,
        min(reading_at) as first_reading_at,
        max(reading_at) as last_reading_at,
        count(*) as reading_count

    from readings
    group by 1, 2

),

final as (

    select
        {{ surrogate_key(['meter_muid', 'direction']) }} as meter_direction_id,
        meter_muid,
        obis_code,
        direction,
        source_stream,
        first_reading_at,
        last_reading_at,
        reading_count

    from meters

)

select * from final
