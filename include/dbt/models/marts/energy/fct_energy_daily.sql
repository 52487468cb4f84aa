{{ config(
    materialized='incremental',
    incremental_strategy='replace_window',
    on_schema_change='fail',
    meta={'window_column': 'reading_date', 'window_grain': 'day', 'window_column_type': 'date'},
) }}

with

readings as (

    select * from {{ ref('int_energy_readings_unpivoted') }}
    where {{ data_interval_predicate('reading_at', 'day') }}

),

daily as (

    select
        meter_muid,
        obis_code,
        direction,
        (reading_at at time zone 'utc')::date as reading_date,
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
