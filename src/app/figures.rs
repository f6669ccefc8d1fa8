//! The app's figures on each shard: HTTP and WebSocket outcomes, auth, rooms, delivery
//! and slow members, history, event streams. The reactor publishes them beside its own
//! ([`crate::reactor::stats`]) for `/stats` and `/metrics`.

use crate::reactor::stats::figures;

figures!(
    /// What one shard's app counts.
    Counts {
        upgraded_open: Gauge "roomcast_websockets" "" "Upgraded WebSocket connections open on the shard.",
        upgraded: Counter "roomcast_upgraded_total" "" "Handshakes completed with 101.",
        http_requests: Counter "roomcast_http_requests_total" "" "Plain HTTP requests answered (healthz, stats, metrics).",
        close_1000: Counter "roomcast_closed_total" "code=\"1000\"" "WebSocket connections closed, by the close code sent or echoed (none: dropped without a close frame).",
        close_1001: Counter "roomcast_closed_total" "code=\"1001\"" "",
        close_1002: Counter "roomcast_closed_total" "code=\"1002\"" "",
        close_1003: Counter "roomcast_closed_total" "code=\"1003\"" "",
        close_1007: Counter "roomcast_closed_total" "code=\"1007\"" "",
        close_1008: Counter "roomcast_closed_total" "code=\"1008\"" "",
        close_1009: Counter "roomcast_closed_total" "code=\"1009\"" "",
        close_1011: Counter "roomcast_closed_total" "code=\"1011\"" "",
        close_other: Counter "roomcast_closed_total" "code=\"other\"" "",
        close_none: Counter "roomcast_closed_total" "code=\"none\"" "",
        refused_400: Counter "roomcast_handshake_refused_total" "status=\"400\"" "Handshakes refused, by HTTP status.",
        refused_401: Counter "roomcast_handshake_refused_total" "status=\"401\"" "",
        refused_403: Counter "roomcast_handshake_refused_total" "status=\"403\"" "",
        refused_404: Counter "roomcast_handshake_refused_total" "status=\"404\"" "",
        refused_405: Counter "roomcast_handshake_refused_total" "status=\"405\"" "",
        refused_426: Counter "roomcast_handshake_refused_total" "status=\"426\"" "",
        refused_429: Counter "roomcast_handshake_refused_total" "status=\"429\"" "",
        refused_431: Counter "roomcast_handshake_refused_total" "status=\"431\"" "",
        refused_503: Counter "roomcast_handshake_refused_total" "status=\"503\"" "",
        messages_in: Counter "roomcast_messages_in_total" "" "WebSocket messages received.",
        messages_out: Counter "roomcast_messages_out_total" "" "Messages queued to clients (echoes, replies, deliveries).",
        deflate_agreed: Counter "roomcast_deflate_agreed_total" "" "Handshakes that agreed to permessage-deflate (--deflate).",
        deflate_in: Counter "roomcast_deflate_messages_total" "direction=\"in\"" "Compressed messages: received (in); compressed to send (out: once per message of a room batch and encoding in use, shared by the members, or once per echo and replayed message).",
        deflate_out: Counter "roomcast_deflate_messages_total" "direction=\"out\"" "",
        protocol_errors: Counter "roomcast_protocol_errors_total" "" "Connections failed for breaking RFC 6455.",
        rate_limited: Counter "roomcast_rate_limited_total" "" "Connections closed for exceeding --rate/--burst.",
        pings_sent: Counter "roomcast_pings_sent_total" "" "Heartbeat pings sent.",
        idle_timeouts: Counter "roomcast_idle_timeouts_total" "" "Connections closed by --idle-timeout.",
        auth_failures: Counter "roomcast_auth_failures_total" "" "Tokens refused (missing, invalid or expired), at the handshake or in a message.",
        tokens_expired: Counter "roomcast_tokens_expired_total" "" "Connections closed because their token expired mid-connection.",
        forbidden: Counter "roomcast_forbidden_total" "" "Joins and publishes refused by the token's room rights.",
        rooms_owned: Gauge "roomcast_rooms_owned" "" "Rooms whose owner is this shard.",
        rooms_local: Gauge "roomcast_rooms_local" "" "Rooms with members on this shard.",
        members: Gauge "roomcast_members" "" "Room memberships on this shard.",
        published: Counter "roomcast_published_total" "" "Messages published by this shard's connections.",
        delivered: Counter "roomcast_delivered_total" "" "Deliveries queued to members on this shard.",
        dropped_oldest: Counter "roomcast_slow_dropped_total" "policy=\"drop-oldest\"" "Deliveries dropped by the slow-consumer policy.",
        dropped_newest: Counter "roomcast_slow_dropped_total" "policy=\"drop-newest\"" "",
        dropped_conflated: Counter "roomcast_slow_dropped_total" "policy=\"conflate\"" "",
        closed_slow: Counter "roomcast_slow_closed_total" "" "Members closed by the slow-consumer policy (close).",
        gap_notices: Counter "roomcast_gap_notices_total" "" "Gap notices queued to members whose slow-consumer policy skipped messages.",
        resumed: Counter "roomcast_resumes_total" "outcome=\"recovered\"" "Joins with `since` (or an SSE Last-Event-ID), by whether the history covered what was missed.",
        resume_failed: Counter "roomcast_resumes_total" "outcome=\"not_recovered\"" "",
        replayed: Counter "roomcast_replayed_total" "" "Messages replayed from history to resuming members.",
        history_bytes: Gauge "roomcast_history_bytes" "" "Heap bytes held by the history of rooms this shard owns.",
        sse_open: Gauge "roomcast_sse_streams" "" "Server-sent event streams (/sse) open on the shard.",
        sse_opened: Counter "roomcast_sse_streams_total" "" "Server-sent event streams (/sse) started.",
    }
);

impl Counts {
    /// Counts a close frame queued with `code` (ours, or the echo of the peer's).
    pub fn count_close(&mut self, code: u16) {
        let field = match code {
            1000 => &mut self.close_1000,
            1001 => &mut self.close_1001,
            1002 => &mut self.close_1002,
            1003 => &mut self.close_1003,
            1007 => &mut self.close_1007,
            1008 => &mut self.close_1008,
            1009 => &mut self.close_1009,
            1011 => &mut self.close_1011,
            _ => &mut self.close_other,
        };
        *field += 1;
    }

    /// Counts a handshake refused with HTTP `status`.
    pub fn count_refusal(&mut self, status: u16) {
        let field = match status {
            400 => &mut self.refused_400,
            401 => &mut self.refused_401,
            403 => &mut self.refused_403,
            405 => &mut self.refused_405,
            426 => &mut self.refused_426,
            429 => &mut self.refused_429,
            431 => &mut self.refused_431,
            503 => &mut self.refused_503,
            _ => &mut self.refused_404,
        };
        *field += 1;
    }
}
