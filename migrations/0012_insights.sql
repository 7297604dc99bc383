-- The slow-query log (InsightsService.SearchSlowQueries): pgfleet's own
-- executions whose duration on a target passed insights.slow_query_threshold.
-- The text is normalized (every literal $n): no values, no credentials.
-- Bounded by insights.slow_query_retention and insights.slow_query_max_entries.
CREATE TABLE pgfleet.slow_queries (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recorded_at      timestamptz NOT NULL DEFAULT now(),
    cloud            text NOT NULL,
    database         text NOT NULL,
    replica          text NOT NULL DEFAULT '',
    fingerprint      text NOT NULL,
    normalized_query text NOT NULL,
    duration_micros  bigint NOT NULL CHECK (duration_micros >= 0),
    rows             bigint NOT NULL CHECK (rows >= 0),
    actor            text NOT NULL,
    success          boolean NOT NULL,
    request_id       text NOT NULL DEFAULT ''
);

CREATE INDEX slow_queries_recorded_at ON pgfleet.slow_queries (recorded_at);
CREATE INDEX slow_queries_fingerprint ON pgfleet.slow_queries (fingerprint, id DESC);
CREATE INDEX slow_queries_actor ON pgfleet.slow_queries (actor, id DESC);
