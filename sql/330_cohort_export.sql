-- idmerge.cohort_export: the people who did an event, as another tool needs them.
-- Grain: one row per person (canonical distinct_id, resolved live).
--
-- Rules (mixpanel-reference.md section 8, decisions.md "Cohort export"):
--   K1  distinct_id is the canonical one: the `$user_id` of an identified person,
--       `$device:<id>` of an anonymous one (original projects: the cluster's canonical id).
--   user_id: simplified and legacy, the canonical id unless it is a `$device:` id. Original:
--       the cluster's first `$identified_id` or alias (lowest ingest sequence), else the
--       canonical id unless it looks anonymous (`$device:` or a UUID v4).
--   device_ids: every device linked to the person (`$device:` ids mapped to them), and an
--       anonymous person's own device; without the prefix, sorted.
--   K6  properties: the profile of the canonical distinct_id (null without one); the CLI
--       turns each property asked for into a column.
-- The event's time bounds the range: p_from and p_to are UTC dates, inclusive; null means
-- no bound.

create or replace function idmerge.cohort_export(
    p_project text, p_event text, p_from date default null, p_to date default null)
returns table (distinct_id text, user_id text, device_ids text[], properties jsonb)
language sql stable as $$
    with project as (
        select p.id, p.id_merge from idmerge.projects as p where p.name = p_project
    ),
    people as (
        select distinct r.distinct_id
        from idmerge.resolved_events as r
        inner join project
            on r.project_id = project.id
        where r.event = p_event
            and (p_from is null or r.time >= p_from::timestamp at time zone 'UTC')
            and (p_to is null or r.time < (p_to + 1)::timestamp at time zone 'UTC')
    ),
    members as (
        select people.distinct_id as canonical_id, people.distinct_id as id
        from people
        union all
        select m.canonical_id, m.id
        from idmerge.identity_map as m
        inner join project
            on m.project_id = project.id
        inner join people
            on m.canonical_id = people.distinct_id
    ),
    devices as (
        select members.canonical_id, array_agg(distinct substr(members.id, 9) order by substr(members.id, 9)) as device_ids
        from members
        where members.id like '$device:%'
        group by members.canonical_id
    ),
    named_users as (
        select distinct on (members.canonical_id) members.canonical_id, members.id
        from members
        inner join project
            on project.id_merge = 'original'
        inner join (
            select i.project_id, i.id, i.seq from idmerge.identified_ids as i
            union all
            select a.project_id, a.alias, a.seq from idmerge.identity_aliases as a
        ) as named
            on named.project_id = project.id and named.id = members.id
        order by members.canonical_id, named.seq, members.id
    ),
    final as (
        select
            people.distinct_id,
            case
                when project.id_merge = 'original' then coalesce(
                    named_users.id,
                    case when not idmerge.is_uuid_v4(people.distinct_id) and people.distinct_id not like '$device:%'
                        then people.distinct_id end)
                when people.distinct_id not like '$device:%' then people.distinct_id
            end as user_id,
            coalesce(devices.device_ids, '{}') as device_ids,
            profiles.properties
        from people
        cross join project
        left join devices
            on devices.canonical_id = people.distinct_id
        left join named_users
            on named_users.canonical_id = people.distinct_id
        left join idmerge.profiles_store as profiles
            on profiles.project_id = project.id and profiles.distinct_id = people.distinct_id
        order by people.distinct_id
    )
    select * from final
$$;

comment on function idmerge.cohort_export(text, text, date, date) is
    'People (canonical distinct_id, user_id, linked device_ids, profile properties) who did p_event between the UTC dates p_from and p_to, inclusive.';
