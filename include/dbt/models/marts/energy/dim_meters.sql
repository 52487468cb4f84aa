with

readings as (

    select * from {{ ref('int_energy_readings_unpivoted') }}

),

meters as (

    select
        meter_muid,
        obis_code,
        direction,
        source_stream,
        min(reading_at) as first_reading_at,
        max(reading_at) as last_reading_at,
        count(*) as reading_count

    from readings
    group by 1, 2, 3, 4

)

select * from meters
