{#-
  md5 over the given SQL expressions, joined with '|' (no dbt packages here).
  Pass timestamptz columns as "<col> at time zone 'utc'" so the key does not
  depend on the session time zone.
-#}
{% macro surrogate_key(expressions) %}
    md5(concat_ws('|'
    {%- for expression in expressions %}, coalesce(({{ expression }})::text, ''){% endfor -%}
    ))
{%- endmacro %}
