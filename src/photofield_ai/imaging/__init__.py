"""Reading image files safely, whatever the model: format checks, limits, the decode memory
budget, libjpeg-turbo DCT scaling and EXIF orientation. Pure: no HTTP, queues or sessions."""
