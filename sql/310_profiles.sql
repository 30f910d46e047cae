-- idmerge.profiles: the documented view of user profiles. Grain: one row per visible profile.
--
-- Rules (mixpanel-reference.md section 3):
--   P-R1   A profile is keyed by its distinct_id and joins to events on the resolved
--          distinct_id (idmerge.resolved_events.distinct_id), so a profile created later
--          still joins to past events.
--   P-R15  Simplified: profiles are listed under the id they were written to. A profile on
--          `$device:D` is not carried to the user when D links: it stays listed under
--          `$device:D`, and no longer joins to the person's events.
--   P-R16  Original: when clusters merge, the canonical id's profile wins; profiles of ids
--          merged into another cluster are hidden (kept in idmerge.profiles_store).

create or replace view idmerge.profiles as
with profiles as (
    select * from idmerge.profiles_store
),
projects as (
    select id, name, id_merge from idmerge.projects
),
merged_away as (
    select m.project_id, m.id
    from idmerge.identity_map as m
    inner join projects
        on projects.id = m.project_id and projects.id_merge = 'original'
    where m.canonical_id <> m.id
),
final as (
    select
        projects.name as project,
        profiles.distinct_id,
        profiles.properties,
        profiles.last_seen_at,
        profiles.created_at,
        profiles.updated_at,
        profiles.project_id
    from profiles
    inner join projects
        on projects.id = profiles.project_id
    where not exists (
        select 1 from merged_away
        where merged_away.project_id = profiles.project_id and merged_away.id = profiles.distinct_id
    )
)
select * from final;

comment on view idmerge.profiles is 'One row per user profile (Engage), keyed by distinct_id; join to idmerge.resolved_events on project and distinct_id.';
comment on column idmerge.profiles.project is 'Project name.';
comment on column idmerge.profiles.distinct_id is 'The $distinct_id of the profile: as written in simplified and legacy projects, the canonical id in original ones.';
comment on column idmerge.profiles.properties is 'Profile properties (jsonb) after every $set, $set_once, $add, $append, $union, $remove and $unset applied.';
comment on column idmerge.profiles.last_seen_at is '$last_seen: time of the latest update sent without $ignore_time ($time, else the moment of import); null when none.';
comment on column idmerge.profiles.created_at is 'When the profile was created (again, after a $delete).';
comment on column idmerge.profiles.updated_at is 'When an import last changed the profile.';
comment on column idmerge.profiles.project_id is 'Project id (idmerge.projects.id).';
