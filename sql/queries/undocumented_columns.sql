-- Invariant: every view of the schema idmerge, and every table a user or an operator reads
-- (interfaces.md "SQL", the README), documents itself and each of its columns with
-- `comment on`, so that `\d+` and BI tools describe them (docs/style.md). Grain: one row per
-- undocumented relation or column; the test suite expects none.

with relations as (
    select c.oid, c.relname
    from pg_class as c
    inner join pg_namespace as n
        on n.oid = c.relnamespace
    where n.nspname = 'idmerge'
        and (c.relkind = 'v'
            or c.relname in ('projects', 'events', 'identity_map', 'import_batches', 'refused_records', 'job_runs'))
),
final as (
    select relations.relname as relation, null::name as column_name
    from relations
    where obj_description(relations.oid, 'pg_class') is null
    union all
    select relations.relname, a.attname
    from relations
    inner join pg_attribute as a
        on a.attrelid = relations.oid
    where a.attnum > 0 and not a.attisdropped and col_description(relations.oid, a.attnum) is null
)
select * from final order by relation, column_name
