//! Every message between the agent and the server: types, version, size limits, codec and the
//! exact bytes that get signed. No I/O. Filled in by the agent issue.
