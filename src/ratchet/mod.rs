//! ratchet (under construction).
