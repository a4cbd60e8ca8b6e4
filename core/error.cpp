#include "core/error.h"

#include <exception>

namespace iris {

std::string join_context(const std::string& outer, const std::string& inner) {
  if (outer.empty()) return inner;
  if (inner.empty()) return outer;
  return outer + ": " + inner;
}

void rethrow_with_context(const std::string& context) {
  try {
    throw;
  } catch (const IoError& e) {
    throw IoError(join_context(context, e.what()));
  } catch (const FormatError& e) {
    throw FormatError(join_context(context, e.what()));
  } catch (const CheckpointError& e) {
    throw CheckpointError(join_context(context, e.what()));
  } catch (const ConfigError& e) {
    throw ConfigError(join_context(context, e.what()));
  } catch (const ShapeError& e) {
    throw ShapeError(join_context(context, e.what()));
  } catch (const Cancelled&) {
    throw;
  } catch (const std::bad_alloc&) {
    throw Error(join_context(context, "out of memory"));
  } catch (const std::exception& e) {
    throw Error(join_context(context, e.what()));
  }
}

}  // namespace iris
