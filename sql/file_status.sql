-- The ledger as people read it: each inbox file, its outcome and row counts, newest first.
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
order by processed_at desc;
