-- The ledger as people read it: each inbox file, its outcome and row counts, newest first;
-- files whose last try hit an error worth retrying show as 'retry' until a run finishes them.
create or replace view file_status as
select
    file_path,
    status,
    rows_in,
    rows_stored,
    rows_quarantined,
    rows_in = rows_stored + rows_quarantined as is_reconciled,
    error,
    model_version,
    run_id,
    processed_at
from processed_files
union all
select a.file_path, 'retry', null, null, null, null,
       'attempt ' || count(*) || ': ' || arg_max(a.error, a.attempted_at), null,
       arg_max(a.run_id, a.attempted_at), max(a.attempted_at)
from file_attempts as a
anti join processed_files as p using (file_path, size_bytes, mtime_ns)
group by a.file_path, a.size_bytes, a.mtime_ns
order by processed_at desc;
