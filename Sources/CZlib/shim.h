// System zlib (zlib1g-dev) for raw-deflate zip entries in torch checkpoints.
#include <zlib.h>
