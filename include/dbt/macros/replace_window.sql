{#-
  Custom incremental strategy `replace_window`: delete the run window from the target,
  then insert what the model selected for it (the model filters with the same
  predicate). Rows outside the window are never touched; rows inside are rebuilt
  from scratch, so re-running a window is idempotent and readings that vanished from
  the source disappear from the mart. With no window (vars unset) the predicate is
  `true`: the whole table is replaced. dbt runs this in the model's transaction, so
  a failure leaves the previous contents in place.

  The model declares its window column in meta:
    config(incremental_strategy='replace_window',
           meta={'window_column': 'reading_date', 'window_grain': 'day', 'window_column_type': 'date'})
-#}
{% macro get_incremental_replace_window_sql(arg_dict) %}
    {%- set target = arg_dict['target_relation'] -%}
    {%- set source = arg_dict['temp_relation'] -%}
    {%- set dest_cols_csv = get_quoted_csv(arg_dict['dest_columns'] | map(attribute='name')) -%}
    {%- set predicate = data_interval_predicate(
            config.meta_require('window_column'),
            config.meta_require('window_grain'),
            config.meta_get('window_column_type', 'timestamptz')) -%}

    delete from {{ target }}
    where {{ predicate }};

    insert into {{ target }} ({{ dest_cols_csv }})
    select {{ dest_cols_csv }}
    from {{ source }};
{% endmacro %}
