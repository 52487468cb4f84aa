{{ config(
    materialized='incremental',
    incremental_strategy='replace_window',
    on_schema_change='fail',
    meta={'window_column': 'hour_start_at', 'window_grain': 'hour'},
) }}

with

readings as (

    select * from {{ ref('int_energy_readings_unpivoted') }}
    where {{ data_interval_predicate('reading_at', 'hour') }}

),

hourly as (

    select
        meter_muid,
        obis_code,
        direction,
        date_trunc('hour', reading_at, 'utc') as hour_start_at,
        sum(energy_kwh) as energy_kwh,
        count(*) as reading_count

    from readings
    group by 1, 2, 3, 4

),

final as (

    select
        {{ surrogate_key(['meter_muid', 'direction', "hour_start_at at time zone 'utc'"]) }}
            as energy_hourly_id,
        meter_muid,
        obis_code,
        direction,
        hour_start_at,
        energy_kwh,
        reading_count,
        reading_count = 4 as is_complete

    from hourly

)

select * from final
