//! The web dashboard in a real browser (headless Chromium over WebDriver) and over raw HTTP:
//! the operator's flow with live agents, CSRF/Origin refusals on every state-changing route,
//! XSS payloads from rigs, roles, login limits and TOTP, and the 1,000-rig overview timing.

/// Log in, see the fleet, filter, open a rig, chart, command, live change, offline, log out.
mod flow;

/// CSRF and Origin on every state-changing route, login refusals, rate limit, TOTP, roles.
mod security;

/// Rig-sent XSS payloads never execute and render as text.
mod xss;

/// Accounts: second-factor limits and replays, sessions ended on changes, per-address login
/// backoff, secrets sealed at rest.
mod accounts;

/// Server-side rendering time and page weight of the overview with 1,000 rigs.
mod scale;
