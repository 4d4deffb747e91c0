// TurboJPEG API (tjDecompressHeader3 / tjDecompress2) for the Imaging target.
#include <stddef.h>
#include <turbojpeg.h>
