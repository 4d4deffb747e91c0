// libpng simplified API (png_image_*) for the Imaging target (zlib comes from CZlib).
#include <png.h>
