// Checks made on output paths before any work (no model loaded, no step taken). `what` names the
// output in errors: a command line's flag ("--out"), or a config field ("output.adapter").
#pragma once
#include <string>
#include <vector>

namespace peft {

/// An output folder: not empty, not "/", its parent an existing writable folder, not a file, and
/// check_output_not_input.
void check_output_folder(const std::string & what, const std::string & out, const std::vector<std::string> & inputs);
/// An output file: as above, and not an existing folder.
void check_output_file(const std::string & what, const std::string & out, const std::vector<std::string> & inputs);
/// The one rule for every output: an output is never an input. `inputs` are the files and folders the
/// work reads (the model folder, adapters, data); every file directly inside an input model folder (one
/// holding config.json: weights, config, tokenizer) counts as an input too, and so do an adapter
/// folder's adapter_config.json and adapter_model.safetensors. `out` may not be one of them, nor a folder
/// containing one, by any name: paths are compared after resolving symlinks (the output's own link and
/// its target), and a hard link to an input is the input.
void check_output_not_input(const std::string & what, const std::string & out, const std::vector<std::string> & inputs);

}  // namespace peft
