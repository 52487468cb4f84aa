{{ config(
    materialized='incremental',
    incremental_strategy='microbatch',
    event_time='hour_start_at',
    batch_size='day',
    begin='2023-02-01',
    lookback=1,
    on_schema_change='fail',
) }}
{{ refuse_windowed_full_refresh() }}

with

-- Microbatch filters this ref on its event_time (interval_start_at) to the batch's day.
readings as (

    select * from {{ ref('int_energy_readings_unpivoted') }}

),

hourly as (

    select
        meter_muid,
        obis_code,
        direction,
        date_trunc('hour', interval_start_at, 'utc') as hour_start_at,
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
