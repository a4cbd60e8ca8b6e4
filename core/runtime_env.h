#pragma once
// Process set-up that must happen before LibTorch's OpenMP runtime starts.
namespace iris {

// On 2 cores, idle OpenMP threads that spin starve OpenBLAS (3-10x slower ops, NOTES.md).
// libgomp reads OMP_WAIT_POLICY when it is loaded, before main(), so setting it later has no
// effect: when it is unset, this sets it to PASSIVE and re-executes the program once.
// Call first thing in main(). Set IRIS_NO_REEXEC=1 to skip (e.g. under a debugger).
void ensure_passive_openmp(int argc, char** argv);

}  // namespace iris
