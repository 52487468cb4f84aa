{{ config(
    materialized='incremental',
    incremental_strategy='microbatch',
    event_time='reading_date',
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

daily as (

    select
        meter_muid,
        obis_code,
        direction,
        (interval_start_at at time zone 'utc')::date as reading_date,
        sum(energy_kwh) as energy_kwh,
        count(*) as reading_count

    from readings
    group by 1, 2, 3, 4

),

final as (

    select
        {{ surrogate_key(['meter_muid', 'direction', 'reading_date']) }} as energy_daily_id,
        meter_muid,
        obis_code,
        direction,
        reading_date,
        energy_kwh,
        reading_count,
        reading_count = 96 as is_complete

    from daily

)

select * from final
