-- 0014: a BRIN index on report_person_events (project_id, event), for the reports that read
-- all the rows of one event name (a funnel's step-2 rows, attribution's conversions).
--
-- A full build writes the rows in (project, event, person) order (sql/150_report_tables.sql),
-- so one name's rows fill a run of consecutive pages. Read through the btree indexes, a
-- parallel bitmap heap scan first builds its bitmap in one process while the others wait:
-- 38 to 71 ms for the 445,755 step-2 rows of the 5M-event benchmark (EXPLAIN ANALYZE), before
-- any row is read. The BRIN bitmap takes under a millisecond; its pages are lossy, so each row
-- is rechecked (14,369 rows of other names per worker at 5M). Rows an incremental refresh
-- writes land wherever there is room, which widens the ranges over time (more rechecks, the
-- planner's estimate follows the correlation) until the next full build; the answers are the
-- same either way.

create index report_person_events_event_brin on idmerge.report_person_events using brin (project_id, event);

comment on index idmerge.report_person_events_event_brin is
    'Page ranges of each (project, event name): a bitmap over one name''s rows without reading a btree (migration 0014).';
