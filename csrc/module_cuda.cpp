// The Python module avfused._C_cuda. Importing it (after avfused._C_cpu, which defines the schemas) runs
// the static registrations of every op's CUDA half (csrc/<op>/<op>_cuda_host.cpp), kept in a module of its
// own so that a CPU-only build still works.
#include <Python.h>

extern "C" PyObject* PyInit__C_cuda(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C_cuda", "avfused_ext CUDA kernels", -1, nullptr};
  return PyModule_Create(&module);
}
