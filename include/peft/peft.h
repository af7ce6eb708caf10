// peft.cpp umbrella header: everything a user of the library needs.
#pragma once
#include "peft/compile/compile.h"
#include "peft/data/chat-template.h"
#include "peft/error.h"
#include "peft/generate/generate.h"
#include "peft/io/safetensors.h"
#include "peft/model/causal-lm.h"
#include "peft/peft-model.h"
#include "peft/tokenizer/tokenizer.h"
#include "peft/train/trainer.h"
#include "peft/tuners/config.h"
#include "peft/util/runtime.h"
