-- span-jobs store: applied when its text changes (store.ensure_schema); every statement is idempotent.
-- No primary keys or unique constraints: a DuckLake catalog has none, and the same schema serves
-- both engines. Uniqueness comes from the claims (one process per file version, inbox.claim) and
-- the ledger check made while holding the claim; every writer only appends.

-- One row per extracted tweet. model_version says which model produced it.
create table if not exists spans (
    tweet_id            varchar not null,
    text                varchar not null,
    sentiment           varchar not null,
    is_sentiment_given  boolean not null,
    sentiment_prob      double,            -- null when the sentiment was given
    span                varchar not null,  -- always substr of text at [span_start, span_end)
    span_start          integer not null,  -- character offsets (Python code points, 0-based, end exclusive)
    span_end            integer not null,
    model_version       varchar not null,
    source_file         varchar not null,
    source_row          bigint not null,   -- 1-based row in the source file
    run_id              varchar not null,
    processed_at        timestamptz not null,
    tweet_created_at    timestamptz,       -- the raw tweet's created_at, when it had one
    extra_columns       json,              -- the raw tweet's other columns
    span_confidence     double             -- the span's expected Jaccard under the model (null: no model)
);
-- databases made before span_confidence get it as their last column too (loads insert by name)
alter table spans add column if not exists span_confidence double;

-- Rows that could not be processed, with the reason. Nothing is dropped silently.
create table if not exists quarantine (
    source_file     varchar not null,
    source_row      bigint not null,
    tweet_id        varchar,
    text            varchar,   -- as much of the raw text as could be decoded (first 1,000 characters)
    reason          varchar not null,  -- a fixed phrase, good for group by
    detail          varchar,           -- the specifics (the bad label, the first file of a duplicate id, ...)
    run_id          varchar not null,
    quarantined_at  timestamptz not null
);

-- The ledger: one row per inbox file version (path, size, mtime) that a run finished with.
-- A file is written together with its spans and quarantine rows in one transaction.
create table if not exists processed_files (
    file_path         varchar not null,
    size_bytes        bigint not null,
    mtime_ns          bigint not null,
    sha256            varchar,
    status            varchar not null,   -- done | failed | unchanged (same bytes as a done version)
    rows_in           bigint,
    rows_stored       bigint,
    rows_quarantined  bigint,
    error             varchar,            -- file-level error for status failed
    model_version     varchar,
    run_id            varchar not null,
    processed_at      timestamptz not null
);

-- Every retraining run and its decision.
create table if not exists training_runs (
    run_id              varchar not null,
    started_at          timestamptz not null,
    finished_at         timestamptz,
    data_path           varchar,
    data_digest         varchar,
    n_train             bigint,
    n_validation        bigint,
    challenger_version  varchar,
    challenger_jaccard  double,
    champion_version    varchar,
    champion_jaccard    double,
    baseline_jaccard    double,
    is_promoted         boolean not null,
    decision_reason     varchar,
    -- end to end: the sentiment tagged by the model, as for raw tweets; the gate keeps it from falling
    challenger_end_to_end_jaccard  double,
    champion_end_to_end_jaccard    double,
    baseline_end_to_end_jaccard    double,
    challenger_sentiment_accuracy  double,
    champion_sentiment_accuracy    double
);
-- databases made before the end-to-end gate get its columns too
alter table training_runs add column if not exists challenger_end_to_end_jaccard double;
alter table training_runs add column if not exists champion_end_to_end_jaccard double;
alter table training_runs add column if not exists baseline_end_to_end_jaccard double;
alter table training_runs add column if not exists challenger_sentiment_accuracy double;
alter table training_runs add column if not exists champion_sentiment_accuracy double;

-- Promotions, newest last: the model history.
create table if not exists model_registry (
    model_version       varchar not null,
    model_path          varchar not null,
    validation_jaccard  double,
    data_digest         varchar,
    promoted_at         timestamptz not null,
    training_run_id     varchar,
    end_to_end_jaccard  double,
    sentiment_accuracy  double
);
alter table model_registry add column if not exists end_to_end_jaccard double;
alter table model_registry add column if not exists sentiment_accuracy double;

-- Tries at an inbox file version that ended in an error worth retrying (a read error of the
-- storage, a load whose row counts did not reconcile), one row per try. After the run's limit
-- the file is given up on: a failed ledger row whose error names the last reason.
create table if not exists file_attempts (
    file_path     varchar not null,
    size_bytes    bigint not null,
    mtime_ns      bigint not null,
    error         varchar not null,
    run_id        varchar not null,
    attempted_at  timestamptz not null
);

-- Which text of this schema and its views the store holds (ensure_schema skips the DDL when current).
create table if not exists schema_version (
    digest      varchar not null,
    applied_at  timestamptz not null
);
