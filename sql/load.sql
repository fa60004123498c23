-- Loading one staged inbox file (pipeline.load_file): run in this order, in ONE transaction.
-- Named parameters: $spans and $quarantine (the staged Parquet files), $source_file, $run_id,
-- $now, $model_version, $text_chars (how much text a quarantine row keeps).

-- name: stage
create or replace temp table staged as
select s.*,
       row_number() over (partition by s.tweet_id order by s.source_row) as copy_number,
       cast(null as varchar) as stored_in
from read_parquet($spans) as s;

-- name: find_stored_ids
update staged
set stored_in = earlier.source_file
from (
    select tweet_id, min(source_file) as source_file
    from spans
    where tweet_id in (select tweet_id from staged)  -- probe spans with this file's ids only
    group by tweet_id
) as earlier
where staged.tweet_id = earlier.tweet_id;

-- name: quarantine_staged
-- rows quarantined while staging: their text is already cut to length
insert into quarantine
select $source_file, source_row, tweet_id, text, reason, detail, $run_id, $now
from read_parquet($quarantine);

-- name: quarantine_duplicates
insert into quarantine
select $source_file, source_row, tweet_id, left(text, $text_chars),
       case when copy_number > 1 then 'duplicate id in file' else 'duplicate id already stored' end,
       case when copy_number > 1 then 'first at an earlier row' else 'stored from ' || stored_in end,
       $run_id, $now
from staged
where copy_number > 1 or stored_in is not null;

-- name: insert_spans
insert into spans by name
select tweet_id, text, sentiment, is_sentiment_given, sentiment_prob, span, span_start, span_end,
       $model_version as model_version, $source_file as source_file, source_row, $run_id as run_id,
       $now as processed_at, try_cast(tweet_created_at as timestamptz) as tweet_created_at,
       cast(extra_columns as json) as extra_columns, span_confidence
from staged
where copy_number = 1 and stored_in is null;

-- name: count_outcome
-- counted from this load's own inputs, not by (file, run): a retried run reuses its run id
select count(*) filter (where copy_number = 1 and stored_in is null) as stored,
       count(*) filter (where copy_number > 1 or stored_in is not null)
       + (select count(*) from read_parquet($quarantine)) as quarantined
from staged;

-- name: insert_ledger
insert into processed_files
values ($source_file, $size_bytes, $mtime_ns, $sha256, 'done', $rows_in, $stored, $quarantined, null,
        $model_version, $run_id, $now);

-- name: drop_staged
drop table staged;
