// The Python module avfused._C_cpu. Importing it runs the static registrations of every op's CPU half
// (csrc/<op>/<op>_cpu.cpp: its schema in the avfused_ext library and its CPU kernels). Fake (meta)
// kernels and autograd are registered from Python, in avfused/ops/<op>.py.
#include <Python.h>

extern "C" PyObject* PyInit__C_cpu(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C_cpu", "avfused_ext CPU kernels", -1, nullptr};
  return PyModule_Create(&module);
}
