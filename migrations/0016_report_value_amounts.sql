-- 0016: attribution values precomputed on the conversion rows (sql/150_report_tables.sql,
-- sql/215_attribution_derived.sql).
--
-- Attribution sums a property of each conversion event (its value: `revenue`, say). Read from
-- report_person_props, that is a join of every converting person's row of that key, the
-- conversion's element found in it by ingest seq, and the JSON value turned into a number:
-- 0.41 to 0.52 s of the 1.0 s of serial work of a first- or last-touch attribution over the
-- 5M-event benchmark (BENCHMARKS.md). A full build now picks the project's value keys (the
-- keys a sample of the events carries as JSON numbers, at most 8) and writes, on each row of
-- report_person_events, those keys' amounts for each of the row's events (the number
-- attribution would credit, idmerge.attribution_amount's rule), aligned with times; reports
-- read the slice of the key asked for, with no join. A key outside the set is read as before.

alter table idmerge.report_state add column value_keys text[] not null default '{}';

comment on column idmerge.report_state.value_keys is 'The property keys whose amounts report_person_events.amounts holds, in its order; chosen by the last full build (a sample of the events'' keys with JSON number values, at most 8).';

alter table idmerge.report_person_events add column amounts double precision[];

comment on column idmerge.report_person_events.amounts is 'Null, or for each event (the order of times) the amount of each of report_state.value_keys (idmerge.attribution_amount of that property): a two-dimensional array, [event][key]. Null when every amount is 0.';

-- Tables built before hold no amounts: forget them, so reports read the live view until the
-- next nightly run rebuilds them whole (with the value keys).
delete from idmerge.report_state;
