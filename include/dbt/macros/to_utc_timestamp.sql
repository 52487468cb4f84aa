{#-
  Cast a raw timestamp to timestamptz, reading values without an offset as UTC.
  Airbyte destinations land date-times as text, timestamp or timestamptz depending
  on the writer; going through text keeps the result independent of both the raw
  column type and the session time zone.
-#}
{% macro to_utc_timestamp(column) %}
    case
        when {{ column }} is null then null
        when ({{ column }})::text ~ '([+-]\d{2}(:?\d{2})?|Z)$'
            then ({{ column }})::text::timestamptz
        else ({{ column }})::text::timestamp at time zone 'utc'
    end
{%- endmacro %}
