-- How sure the model is of its spans: span_confidence (the span's expected Jaccard) per day and
-- sentiment, as quartiles and the share of spans under 0.5, the ones worth auditing first.
create or replace view span_confidence_by_day as
with scored as (
    select
        cast(coalesce(tweet_created_at, processed_at) as date) as tweet_date,
        sentiment,
        is_sentiment_given,
        span_confidence
    from spans
    where span_confidence is not null  -- spans no model chose (the full-text baseline) have none
)

select
    tweet_date,
    sentiment,
    count(*) as span_count,
    avg(span_confidence) as mean_confidence,
    quantile_cont(span_confidence, 0.25) as confidence_p25,
    quantile_cont(span_confidence, 0.5) as confidence_median,
    quantile_cont(span_confidence, 0.75) as confidence_p75,
    avg(case when span_confidence < 0.5 then 1.0 else 0.0 end) as share_below_half,
    avg(case when is_sentiment_given then 0.0 else 1.0 end) as share_sentiment_tagged
from scored
group by tweet_date, sentiment
order by tweet_date, sentiment;
