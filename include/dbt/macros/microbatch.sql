{#-
  The one custom piece microbatch needs here. dbt-postgres runs each microbatch batch as a
  MERGE on `unique_key`: a (meter, direction, day) that vanished from the source would stay
  in the mart forever. This override (dispatch finds the root project's macro first) does
  what dbt's other adapters do instead: delete the batch's event_time range from the
  target, then insert the batch. Batch boundaries are UTC timestamps; as untyped literals
  Postgres casts them to the event_time column's own type (date or timestamptz).
-#}
{% macro postgres__get_incremental_microbatch_sql(arg_dict) %}
    {%- set target = arg_dict['target_relation'] -%}
    {%- set source = arg_dict['temp_relation'] -%}
    {%- set event_time = config.require('event_time') -%}
    {%- set dest_cols_csv = get_quoted_csv(arg_dict['dest_columns'] | map(attribute='name')) -%}
    {%- set predicates = [] + (arg_dict.get('incremental_predicates') or []) -%}
    {%- if model.batch and model.batch.event_time_start -%}
        {%- do predicates.append(event_time ~ " >= '" ~ model.batch.event_time_start.isoformat() ~ "'") -%}
    {%- endif -%}
    {%- if model.batch and model.batch.event_time_end -%}
        {%- do predicates.append(event_time ~ " < '" ~ model.batch.event_time_end.isoformat() ~ "'") -%}
    {%- endif -%}

    delete from {{ target }}
    where {{ predicates | join(' and ') if predicates else 'true' }};

    insert into {{ target }} ({{ dest_cols_csv }})
    select {{ dest_cols_csv }}
    from {{ source }};
{% endmacro %}


{#-
  `--full-refresh` re-creates the table from the batches of this invocation only: with an
  event-time window that would silently drop every day outside it. Refuse that; a full
  rebuild is `--full-refresh` without `--event-time-start/--event-time-end` (all batches
  from the model's `begin`).
-#}
{% macro refuse_windowed_full_refresh() %}
    {%- if execute and flags.FULL_REFRESH and model.config.get('full_refresh') is not false -%}
        {%- set start = invocation_args_dict.get('event_time_start') -%}
        {%- set end = invocation_args_dict.get('event_time_end') -%}
        {%- if start or end -%}
            {{ exceptions.raise_compiler_error(
                model.name ~ ": --full-refresh with --event-time-start/--event-time-end (" ~ start ~ " .. " ~ end
                ~ ") would keep only that window; run the window without --full-refresh, or --full-refresh"
                ~ " without a window to rebuild every batch") }}
        {%- endif -%}
    {%- endif -%}
{% endmacro %}
