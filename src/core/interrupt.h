// Cooperative interruption: SIGINT/SIGTERM set a flag that long loops poll, so a render or a
// training run stops at a safe point, removes partial output (or saves a checkpoint) and exits
// with 128 + signal. A second signal terminates at once.
#pragma once

namespace vdm {

// Installs the handlers for SIGINT and SIGTERM (idempotent).
void install_interrupt_handlers();
// The signal received (SIGINT/SIGTERM) or 0.
int interrupt_signal();
// Throws vdm::Interrupted when a signal was received.
void throw_if_interrupted();

}  // namespace vdm
