//! What roomcast serves browsers beside the protocol: the client library at `/roomcast.js`
//! (`clients/js/roomcast.js`, embedded), the demo page at `/` (`clients/demo/index.html`;
//! `--demo false` turns it off), and the answer to a plain `GET /ws`, which tells a client
//! whose handshake failed why (a browser cannot read the status of a refused upgrade).

use std::sync::Arc;

use crate::protocol::handshake::{self, Request};
use crate::protocol::{SharedFrame, Status};

use super::gate::Refusal;
use super::ws::L;
use super::App;

pub const CLIENT_JS: &str = include_str!("../../clients/js/roomcast.js");
pub const DEMO_HTML: &str = include_str!("../../clients/demo/index.html");

impl App {
    /// A plain GET this module answers: true if it did.
    pub(super) fn asset(&mut self, link: L, req: &Request<'_>) -> bool {
        let (status, ctype, extra, body): (_, _, String, &[u8]) = match req.path {
            "/roomcast.js" => (
                Status::Ok,
                "text/javascript; charset=utf-8",
                "Cache-Control: no-cache\r\nAccess-Control-Allow-Origin: *\r\n".into(),
                CLIENT_JS.as_bytes(),
            ),
            "/" if self.cfg.demo => (
                Status::Ok,
                "text/html; charset=utf-8",
                "Cache-Control: no-cache\r\n".into(),
                DEMO_HTML.as_bytes(),
            ),
            "/ws" | "/echo" => {
                let (status, text) = self.probe(link, req);
                // Readable from a page on an allowed origin (the client's fetch).
                let cors = match req.origin {
                    Some(o) if self.front.gate.origin_allowed(Some(o)) => {
                        format!("Access-Control-Allow-Origin: {o}\r\nVary: Origin\r\n")
                    }
                    _ => String::new(),
                };
                let mut out = Vec::new();
                let ctype = "text/plain; charset=utf-8";
                let body = format!("{text}\n");
                handshake::http_response(status, ctype, &cors, body.as_bytes(), true, &mut out);
                link.figures().http_requests += 1;
                link.finish(SharedFrame::from_encoded(Arc::from(out)));
                return true;
            }
            _ => return false,
        };
        link.figures().http_requests += 1;
        let mut out = Vec::with_capacity(body.len() + 256);
        handshake::http_response(status, ctype, &extra, body, true, &mut out);
        link.finish(SharedFrame::from_encoded(Arc::from(out)));
        true
    }

    /// What an upgrade of this request would have been refused with, checked without
    /// keeping a connection counted: drain (503), Origin (403), a token given and refused
    /// (401), the connection limits (503 full, 429 per address or user), else 400 (send
    /// the upgrade). A missing token is not refused on `/ws`: it may come in an `auth` op.
    fn probe(&self, link: L, req: &Request<'_>) -> (Status, &'static str) {
        let gate = &self.front.gate;
        if self.front.drain.active() {
            return (Status::ServiceUnavailable, "server shutting down");
        }
        if !gate.origin_allowed(req.origin) {
            return (Status::Forbidden, "origin not allowed");
        }
        let mut user = None;
        if let Some(auth) = &gate.auth {
            match auth.find_token(req).map(|t| auth.verify(t)) {
                Some(Err(e)) => return (Status::Unauthorized, e.reason()),
                None if req.path == "/echo" => return (Status::Unauthorized, "missing token"),
                Some(Ok(s)) => user = Some(s.sub),
                None => {}
            }
        }
        let refused = |r: Refusal| match r {
            Refusal::Full => (Status::ServiceUnavailable, r.reason()),
            _ => (Status::TooManyRequests, r.reason()),
        };
        let peer = link.app().peer;
        match gate.admit(peer) {
            Ok(a) => gate.release(peer, a),
            Err(r) => return refused(r),
        }
        if let Some(sub) = user {
            match gate.admit_user(&sub) {
                Ok(()) => gate.release_user(&sub),
                Err(r) => return refused(r),
            }
        }
        (
            Status::BadRequest,
            "this endpoint speaks WebSocket: send Upgrade: websocket",
        )
    }
}
