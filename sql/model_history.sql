-- Model history: each training run with both models' scores (sentiment given and end to end),
-- the sentiment accuracy, the decision, and how many spans each model produced.
create or replace view model_history as
with spans_per_model as (
    select model_version, count(*) as span_count, min(processed_at) as first_used_at, max(processed_at) as last_used_at
    from spans
    group by model_version
)

select
    runs.run_id,
    runs.started_at,
    runs.challenger_version,
    runs.challenger_jaccard,
    runs.challenger_end_to_end_jaccard,
    runs.challenger_sentiment_accuracy,
    runs.champion_version,
    runs.champion_jaccard,
    runs.champion_end_to_end_jaccard,
    runs.champion_sentiment_accuracy,
    runs.baseline_jaccard,
    runs.baseline_end_to_end_jaccard,
    runs.is_promoted,
    runs.decision_reason,
    coalesce(used.span_count, 0) as challenger_span_count
from training_runs as runs
left join spans_per_model as used on used.model_version = runs.challenger_version
order by runs.started_at;
