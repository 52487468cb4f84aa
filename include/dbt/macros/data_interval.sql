{#-
  The run window: vars `data_interval_start` / `data_interval_end` (ISO-8601, end
  exclusive; a value without offset is taken as UTC). Both unset (null or '') means
  "no window": windowed models rebuild everything. The values are parsed at compile
  time, so compiled SQL holds plain timestamp literals and nothing depends on the
  clock or the session time zone.
-#}

{% macro _parse_interval_var(name) %}
    {%- set raw = var(name, none) -%}
    {%- if raw is none or (raw | string | trim) == '' -%}
        {{ return(none) }}
    {%- endif -%}
    {#- `--vars` is YAML: an unquoted timestamp arrives as a datetime, hence str(). -#}
    {%- set text = raw | string | trim -%}
    {%- set iso = '^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?)?(Z|[+-]\d{2}:?\d{2})?$' -%}
    {%- if not modules.re.match(iso, text) -%}
        {{ exceptions.raise_compiler_error(
            "var " ~ name ~ "=" ~ text ~ " is not an ISO-8601 timestamp (e.g. 2023-02-01T00:00:00+00:00)") }}
    {%- endif -%}
    {%- set parsed = modules.datetime.datetime.fromisoformat(text) -%}
    {%- set utc = modules.pytz.utc -%}
    {%- if parsed.tzinfo is none -%}
        {%- set parsed = parsed.replace(tzinfo=utc) -%}
    {%- endif -%}
    {{ return(parsed.astimezone(utc)) }}
{% endmacro %}


{#- Returns none (no window) or {'start': datetime, 'end': datetime} in UTC. -#}
{% macro data_interval() %}
    {%- set start = _parse_interval_var('data_interval_start') -%}
    {%- set end = _parse_interval_var('data_interval_end') -%}
    {%- if start is none and end is none -%}
        {{ return(none) }}
    {%- elif start is none or end is none -%}
        {{ exceptions.raise_compiler_error(
            "set both data_interval_start and data_interval_end, or neither (got start="
            ~ start ~ ", end=" ~ end ~ ")") }}
    {%- elif start >= end -%}
        {{ exceptions.raise_compiler_error(
            "data_interval_start (" ~ start ~ ") must be before data_interval_end (" ~ end ~ ")") }}
    {%- endif -%}
    {{ return({'start': start, 'end': end}) }}
{% endmacro %}


{#- Truncate a UTC datetime to `grain` ('hour' or 'day'); `ceil` rounds up instead. -#}
{% macro _truncate_to_grain(ts, grain, ceil=false) %}
    {%- if grain == 'hour' -%}
        {%- set floored = ts.replace(minute=0, second=0, microsecond=0) -%}
        {%- set step = modules.datetime.timedelta(hours=1) -%}
    {%- elif grain == 'day' -%}
        {%- set floored = ts.replace(hour=0, minute=0, second=0, microsecond=0) -%}
        {%- set step = modules.datetime.timedelta(days=1) -%}
    {%- else -%}
        {{ exceptions.raise_compiler_error("window grain must be 'hour' or 'day', got " ~ grain) }}
    {%- endif -%}
    {{ return(floored + step if ceil and floored != ts else floored) }}
{% endmacro %}


{#-
  SQL predicate selecting the run window on `column`, widened to whole `grain`
  buckets (a daily mart re-does every day the window touches). `column_type` is
  'timestamptz' for timestamps or 'date' for day columns. 'true' when no window.
  Used both to filter what a windowed model selects and, by the `replace_window`
  incremental strategy, to delete the same slice of the target first.
-#}
{% macro data_interval_predicate(column, grain, column_type='timestamptz') %}
    {%- set window = data_interval() -%}
    {%- if window is none -%}
        {{ return('true') }}
    {%- endif -%}
    {%- set lower = _truncate_to_grain(window.start, grain) -%}
    {%- set upper = _truncate_to_grain(window.end, grain, ceil=true) -%}
    {%- if column_type == 'date' -%}
        {%- set fmt = '%Y-%m-%d' -%}
    {%- elif column_type == 'timestamptz' -%}
        {%- set fmt = '%Y-%m-%dT%H:%M:%S+00:00' -%}
    {%- else -%}
        {{ exceptions.raise_compiler_error("column_type must be 'timestamptz' or 'date', got " ~ column_type) }}
    {%- endif -%}
    {{ return(column ~ " >= '" ~ lower.strftime(fmt) ~ "'::" ~ column_type
              ~ " and " ~ column ~ " < '" ~ upper.strftime(fmt) ~ "'::" ~ column_type) }}
{% endmacro %}
