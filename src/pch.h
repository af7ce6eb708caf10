// Precompiled header for the library, the CLI and the tests: the LibTorch and JSON headers that nearly
// every translation unit needs. Keep it to third-party headers so that editing project code never
// rebuilds it.
#pragma once
#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/types.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>
