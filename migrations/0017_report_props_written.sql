-- 0017: the people whose report_person_props rows a refresh's props part rewrote
-- (sql/150_report_tables.sql, "Refreshing").
--
-- The nightly refresh writes report_person_props in a transaction of its own, committed
-- before the one that writes the other derived tables and moves report_state.as_of_seq. When
-- that second one fails, the props rows of the people the first rewrote are ahead of the
-- other tables. Reports stay exact (those people are stale until the next refresh), but a
-- person among them may since have vanished into another (a merge), and so not be stale for
-- the next refresh, which would leave their props rows in place for good. The props part
-- records here whom it rewrote, from which as_of_seq; the next refresh adds them to its stale
-- people when that as_of_seq is still report_state's (the other part never committed), and
-- forgets the rows either way.

create unlogged table idmerge.report_props_written (
    id          bigint generated always as identity primary key,
    project_id  integer not null references idmerge.projects (id),
    as_of_seq   bigint not null,
    people      text[] not null
);

create index report_props_written_project on idmerge.report_props_written (project_id);

comment on table idmerge.report_props_written is 'Who each nightly refresh''s props part rewrote in report_person_props (unlogged, as the derived tables): read and emptied by the next refresh.';
comment on column idmerge.report_props_written.id is 'Row number.';
comment on column idmerge.report_props_written.project_id is 'The project.';
comment on column idmerge.report_props_written.as_of_seq is 'report_state.as_of_seq when the props part ran: still the same at the next refresh means the other part never committed.';
comment on column idmerge.report_props_written.people is 'The distinct_ids whose report_person_props rows it deleted and rewrote.';
