// Run-time binding of Open MPI's C API (see include/ldm_mpi.h). The function types follow the MPI 3.1 standard's C
// bindings with Open MPI's handle types (pointers to opaque structs, here void *), checked against Open MPI 4.1.4's
// mpi.h: typedef struct ompi_communicator_t *MPI_Comm (likewise MPI_Datatype, MPI_Op), MPI_IN_PLACE ((void *) 1),
// MPI_THREAD_FUNNELED = 1 (enum after MPI_THREAD_SINGLE), MPI_MAX_ERROR_STRING 256, typedef struct ompi_request_t
// *MPI_Request, MPI_STATUS_IGNORE ((MPI_Status *) 0).
#define _GNU_SOURCE
#include "ldm_mpi.h"

#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

typedef void *Handle;
#define LDM_MPI_IN_PLACE ((void *)1)
#define LDM_MPI_THREAD_FUNNELED 1
#define LDM_MPI_MAX_ERROR_STRING 256
#define LDM_MPI_STATUS_IGNORE ((void *)0)
#define LDM_MPI_ERR_COUNT 2
#define LDM_CHUNK ((size_t)1 << 30)

static int (*p_init_thread)(int *, char ***, int, int *);
static int (*p_comm_rank)(Handle, int *);
static int (*p_comm_size)(Handle, int *);
static int (*p_comm_dup)(Handle, Handle *);
static int (*p_allreduce)(const void *, void *, int, Handle, Handle, Handle);
static int (*p_iallreduce)(const void *, void *, int, Handle, Handle, Handle, Handle *);
static int (*p_test)(Handle *, int *, void *);
static int (*p_wait)(Handle *, void *);
static int (*p_bcast)(void *, int, Handle, int, Handle);
static int (*p_barrier)(Handle);
static int (*p_abort)(Handle, int);
static int (*p_finalize)(void);
static int (*p_error_string)(int, char *, int *);
static Handle grad_comm;
static Handle comm_world, type_float, type_double, type_byte, op_sum;
static int loaded;

int ldm_mpi_load(const char *library, char *error, size_t error_length) {
    if (loaded) return 0;
    const char *name = library ? library : "libmpi.so.40";
    // RTLD_GLOBAL: Open MPI dlopens its own components (mca_*), which resolve libmpi's symbols globally.
    void *h = dlopen(name, RTLD_NOW | RTLD_GLOBAL);
    if (!h) {
        snprintf(error, error_length, "cannot load %s (%s)", name, dlerror());
        return -1;
    }
#define SYM(var, symbol)                                                                        \
    do {                                                                                        \
        *(void **)(&var) = dlsym(h, symbol);                                                    \
        if (!var) {                                                                             \
            snprintf(error, error_length, "%s lacks %s: not Open MPI's libmpi?", name, symbol); \
            return -1;                                                                          \
        }                                                                                       \
    } while (0)
    SYM(p_init_thread, "MPI_Init_thread");
    SYM(p_comm_rank, "MPI_Comm_rank");
    SYM(p_comm_size, "MPI_Comm_size");
    SYM(p_comm_dup, "MPI_Comm_dup");
    SYM(p_allreduce, "MPI_Allreduce");
    SYM(p_iallreduce, "MPI_Iallreduce");
    SYM(p_test, "MPI_Test");
    SYM(p_wait, "MPI_Wait");
    SYM(p_bcast, "MPI_Bcast");
    SYM(p_barrier, "MPI_Barrier");
    SYM(p_abort, "MPI_Abort");
    SYM(p_finalize, "MPI_Finalize");
    SYM(p_error_string, "MPI_Error_string");
    SYM(comm_world, "ompi_mpi_comm_world");
    SYM(type_float, "ompi_mpi_float");
    SYM(type_double, "ompi_mpi_double");
    SYM(type_byte, "ompi_mpi_byte");
    SYM(op_sum, "ompi_mpi_op_sum");
#undef SYM
    loaded = 1;
    return 0;
}

int ldm_mpi_loaded(void) { return loaded; }

int ldm_mpi_init(int *provided) {
    int rc = p_init_thread(NULL, NULL, LDM_MPI_THREAD_FUNNELED, provided);
    if (rc != 0) return rc;
    return p_comm_dup(comm_world, &grad_comm);
}
int ldm_mpi_rank(int *rank) { return p_comm_rank(comm_world, rank); }
int ldm_mpi_size(int *size) { return p_comm_size(comm_world, size); }

static int allreduce_sum(char *buffer, size_t count, size_t element, Handle type) {
    for (size_t off = 0; off < count; off += LDM_CHUNK) {
        size_t n = count - off < LDM_CHUNK ? count - off : LDM_CHUNK;
        int rc = p_allreduce(LDM_MPI_IN_PLACE, buffer + off * element, (int)n, type, op_sum, comm_world);
        if (rc != 0) return rc;
    }
    return 0;
}

int ldm_mpi_allreduce_sum_float(float *buffer, size_t count) {
    return allreduce_sum((char *)buffer, count, sizeof(float), type_float);
}

int ldm_mpi_allreduce_sum_double(double *buffer, size_t count) {
    return allreduce_sum((char *)buffer, count, sizeof(double), type_double);
}

int ldm_mpi_iallreduce_sum_float(float *buffer, size_t count, void **request) {
    if (count > INT_MAX) return LDM_MPI_ERR_COUNT;
    return p_iallreduce(LDM_MPI_IN_PLACE, buffer, (int)count, type_float, op_sum, grad_comm, (Handle *)request);
}

int ldm_mpi_test(void **request, int *flag) { return p_test((Handle *)request, flag, LDM_MPI_STATUS_IGNORE); }
int ldm_mpi_wait(void **request) { return p_wait((Handle *)request, LDM_MPI_STATUS_IGNORE); }

int ldm_mpi_broadcast(void *buffer, size_t count, int root) {
    for (size_t off = 0; off < count; off += LDM_CHUNK) {
        size_t n = count - off < LDM_CHUNK ? count - off : LDM_CHUNK;
        int rc = p_bcast((char *)buffer + off, (int)n, type_byte, root, comm_world);
        if (rc != 0) return rc;
    }
    return 0;
}

int ldm_mpi_barrier(void) { return p_barrier(comm_world); }
int ldm_mpi_abort(int code) { return p_abort(comm_world, code); }
int ldm_mpi_finalize(void) { return p_finalize(); }

void ldm_mpi_error_string(int code, char *buffer, size_t length) {
    char text[LDM_MPI_MAX_ERROR_STRING + 1];
    int n = 0;
    if (!loaded || p_error_string(code, text, &n) != 0) n = snprintf(text, sizeof text, "MPI error %d", code);
    if (n < 0) n = 0;
    if (n > LDM_MPI_MAX_ERROR_STRING) n = LDM_MPI_MAX_ERROR_STRING;
    text[n] = 0;
    snprintf(buffer, length, "%s", text);
}
