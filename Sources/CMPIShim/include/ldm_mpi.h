// The few MPI calls data-parallel training needs (MPI 3.1 standard: MPI_Init_thread, MPI_Comm_dup, MPI_Allreduce,
// MPI_Iallreduce, MPI_Test, MPI_Wait, MPI_Bcast, MPI_Barrier, MPI_Abort, MPI_Finalize), reached through libmpi loaded at run time, so the package builds and runs
// without MPI installed. Open MPI only (libmpi.so.40, the soname of Open MPI 3.x-5.x): its handles MPI_COMM_WORLD,
// MPI_FLOAT, MPI_DOUBLE, MPI_BYTE and MPI_SUM are the addresses of the exported globals ompi_mpi_comm_world,
// ompi_mpi_float, ompi_mpi_double, ompi_mpi_byte and ompi_mpi_op_sum (mpi.h: OMPI_PREDEFINED_GLOBAL), which Swift
// could not import as they are macros. Every function returns an MPI error code (0 = MPI_SUCCESS) unless noted.
#ifndef LDM_MPI_H
#define LDM_MPI_H

#include <stddef.h>

/// Loads `library` (NULL: libmpi.so.40) and resolves every symbol. Returns 0, or -1 with a message in `error`.
int ldm_mpi_load(const char *library, char *error, size_t error_length);
/// Whether ldm_mpi_load succeeded.
int ldm_mpi_loaded(void);
/// MPI_Init_thread(MPI_THREAD_FUNNELED): only the thread that initialised MPI calls it. `provided` gets the level.
/// Then MPI_Comm_dup(MPI_COMM_WORLD) for the non-blocking gradient all-reduces.
int ldm_mpi_init(int *provided);
int ldm_mpi_rank(int *rank);
int ldm_mpi_size(int *size);
/// In-place MPI_Allreduce(MPI_SUM) on MPI_COMM_WORLD, in chunks of at most 2^30 elements (MPI counts are int).
int ldm_mpi_allreduce_sum_float(float *buffer, size_t count);
int ldm_mpi_allreduce_sum_double(double *buffer, size_t count);
/// Starts an in-place MPI_Iallreduce(MPI_SUM) of `count` floats (at most INT_MAX: the caller splits larger buffers) on
/// the gradient communicator, a duplicate of MPI_COMM_WORLD made by ldm_mpi_init, so that gradient buckets in flight
/// never interleave with the collectives on MPI_COMM_WORLD (SyncBatchNorm's statistics, loss averages). `request`
/// receives the MPI_Request (an opaque pointer in Open MPI) for ldm_mpi_test / ldm_mpi_wait.
int ldm_mpi_iallreduce_sum_float(float *buffer, size_t count, void **request);
/// MPI_Test: `flag` 1 when the request completed (then it is released), 0 otherwise. Also drives MPI's progress.
int ldm_mpi_test(void **request, int *flag);
/// MPI_Wait: blocks until the request completed, then releases it.
int ldm_mpi_wait(void **request);
/// MPI_Bcast of bytes from `root`, chunked like the all-reduce.
int ldm_mpi_broadcast(void *buffer, size_t count, int root);
int ldm_mpi_barrier(void);
/// MPI_Abort(MPI_COMM_WORLD, code): does not return when MPI is up.
int ldm_mpi_abort(int code);
int ldm_mpi_finalize(void);
/// MPI_Error_string for `code` into `buffer`.
void ldm_mpi_error_string(int code, char *buffer, size_t length);

#endif
