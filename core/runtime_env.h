#pragma once
// Process set-up that must happen before LibTorch's OpenMP runtime starts, and the allocator
// policy of the front ends.
namespace iris {

// On 2 cores, idle OpenMP threads that spin starve OpenBLAS (3-10x slower ops, NOTES.md).
// libgomp reads OMP_WAIT_POLICY when it is loaded, before main(), so setting it later has no
// effect: when it is unset, this sets it to PASSIVE and re-executes the program once.
// With `huge_pages`, the same re-exec also sets GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (glibc
// reads it at start-up too): malloc then asks for transparent huge pages, 512x fewer page
// faults when multi-GB weights and activations are first touched (a fault costs ~30 us here).
// Call first thing in main(). Set IRIS_NO_REEXEC=1 to skip (e.g. under a debugger).
void ensure_passive_openmp(int argc, char** argv, bool huge_pages = false);

// Keeps freed heap memory for reuse instead of returning it (no mmap for big blocks, no
// trimming): activations of one denoising step reuse the previous step's pages instead of
// faulting fresh ones in. Peak RSS is unchanged; RSS no longer shrinks between steps.
void keep_freed_memory();

// Returns freed heap memory to the system (malloc_trim: the top of the heap and free pages
// inside it), whatever keep_freed_memory() said. For the moment a whole model's weights are
// dropped: the heap is fragmented by then, so the next phase's big activations would not fit
// in the freed holes and would grow the heap on top of them.
void release_free_memory();

}  // namespace iris
