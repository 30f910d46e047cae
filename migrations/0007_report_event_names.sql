-- 0007: report timelines keyed by a project-wide event-name number instead of the name's
-- position among the person's own names (sql/150_report_tables.sql, sql/205_funnel_derived.sql).
--
-- A funnel then knows each step's block of keys before it reads a row, instead of looking the
-- step names up in every person's list of names (three array_position calls per row were a
-- third of the funnel's time), and report_person_events no longer repeats the person's names
-- on each of their rows. The names also count their people, so an all-time funnel's entries
-- need no scan of the step-1 rows.

-- One row per project and event name the derived tables have seen: the name's number. Numbers
-- are dense from 0 per project, given in order of first sight and never changed, so the
-- timelines of people refreshed at different times agree.
create table idmerge.report_event_names (
    project_id  integer not null,
    event       text not null,
    id          integer not null check (id >= 0 and id < 2097152),
    people      bigint not null default 0,
    primary key (project_id, event),
    unique (project_id, id)
);

comment on table idmerge.report_event_names is 'Derived: a number per project and event name, for the timeline keys of report_person_events.person_keys.';
comment on column idmerge.report_event_names.project_id is 'The project.';
comment on column idmerge.report_event_names.event is 'The event name.';
comment on column idmerge.report_event_names.people is 'The rows of report_person_events with this name: the people who did it (an all-time funnel''s entries, without a scan).';
comment on column idmerge.report_event_names.id is 'The name''s number, dense from 0 in order of first sight, below 2^21 (keys are number * 2^42 + epoch milliseconds).';

alter table idmerge.report_person_events drop column person_events;

comment on column idmerge.report_person_events.person_keys is 'The person''s whole timeline, repeated on each of their rows (a funnel then reads one row per person and step, no join): one key per event, report_event_names.id * 2^42 + epoch milliseconds, sorted; so the times of one name are one sorted run.';

-- The keys stored so far number names per person: forget the tables, so reports read the live
-- view until the next nightly run rebuilds them whole.
delete from idmerge.report_state;
