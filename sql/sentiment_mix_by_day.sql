-- Sentiment mix over time: tweets per day and sentiment, with each sentiment's share of the day.
create or replace view sentiment_mix_by_day as
with spans_dated as (
    select
        cast(coalesce(tweet_created_at, processed_at) as date) as tweet_date,
        sentiment
    from spans
),

counted as (
    select tweet_date, sentiment, count(*) as tweet_count
    from spans_dated
    group by tweet_date, sentiment
)

select
    tweet_date,
    sentiment,
    tweet_count,
    tweet_count / sum(tweet_count) over (partition by tweet_date) as share_of_day
from counted
order by tweet_date, sentiment;
